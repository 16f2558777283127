"""Reference SGCL pretraining: BYOL, SimCLR or NNCLR, with or without SGCL (the trainer is `sgcl_plugin.train`).

python examples/sgcl_train.py --help                        # every option, in groups, with its default
python examples/sgcl_train.py --method simclr --smoke       # a few steps on tiny data
"""

from sgcl_plugin.train import cli

if __name__ == "__main__":
    cli()
