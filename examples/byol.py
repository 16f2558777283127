"""BYOL pretraining with SGCL (`--no-sgcl` for the plain BYOL baseline): examples/sgcl_train.py preset."""

from sgcl_train import main

if __name__ == "__main__":
    main(method="byol")
