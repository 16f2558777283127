"""SIMCLR pretraining with SGCL (`--no-sgcl` for the plain SIMCLR baseline): examples/sgcl_train.py preset."""

from sgcl_train import main

if __name__ == "__main__":
    main(method="simclr")
