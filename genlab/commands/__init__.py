"""One module per `genlab <command>`, each with a Hydra `main`."""
