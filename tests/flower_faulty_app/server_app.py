"""fedlearn_lab's ServerApp."""

from fedlearn_lab.flower import server_app

app = server_app()
