"""equivar's Hydra configs (installed as the package data of ``equivar.conf``)."""
