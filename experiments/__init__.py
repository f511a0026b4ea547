"""One module per experiment; ``EXPERIMENTS`` maps the config's ``experiment_name`` to its ``run``."""

from experiments import shift_test

EXPERIMENTS = {
    "shift_test": shift_test.run,
}
