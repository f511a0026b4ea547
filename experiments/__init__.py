"""One module per experiment; ``EXPERIMENTS`` maps the config's ``experiment_name`` to its ``run``."""

from experiments import anatomy, conv_compare, shift_test

EXPERIMENTS = {
    "anatomy": anatomy.run,
    "conv_compare": conv_compare.run,
    "shift_test": shift_test.run,
}
