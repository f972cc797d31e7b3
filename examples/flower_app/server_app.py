"""The ServerApp: Flower's FedAvg, then fedlearn_lab's server adjustment."""

from fedlearn_lab.flower import server_app

app = server_app()
