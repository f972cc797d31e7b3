"""The ClientApp: device `partition-id` trains with fedlearn_lab's local SGD."""

from fedlearn_lab.flower import client_app

app = client_app()
