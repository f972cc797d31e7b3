"""The server: fedlearn_lab's ServerApp (FedAvg, then the server adjustment or FedDU)
in deployment mode, set by this app's run config."""

from fedlearn_lab.flower import server_app

app = server_app()
