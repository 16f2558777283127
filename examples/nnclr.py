"""NNCLR pretraining with SGCL (`--no-sgcl` for the plain NNCLR baseline): examples/sgcl_train.py preset."""

from sgcl_train import cli

if __name__ == "__main__":
    cli(method="nnclr")
