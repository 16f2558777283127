"""SIMCLR pretraining with SGCL (`--no-sgcl` for the plain SIMCLR baseline): the trainer with the method preset."""

from sgcl_plugin.train import cli

if __name__ == "__main__":
    cli(method="simclr")
