"""BYOL pretraining with SGCL (`--no-sgcl` for the plain BYOL baseline): examples/sgcl_train.py preset."""

from sgcl_train import cli

if __name__ == "__main__":
    cli(method="byol")
