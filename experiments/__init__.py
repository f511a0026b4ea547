"""One module per experiment; ``EXPERIMENTS`` maps the config's ``experiment_name`` to its ``run``."""

from equivar.experiments import (
    anatomy,
    conv_compare,
    equivariance,
    feature_pooling,
    padding_leak,
    pooling_invariance,
    shift_test,
)

EXPERIMENTS = {
    "anatomy": anatomy.run,
    "conv_compare": conv_compare.run,
    "equivariance": equivariance.run,
    "feature_pooling": feature_pooling.run,
    "padding_leak": padding_leak.run,
    "pooling_invariance": pooling_invariance.run,
    "shift_test": shift_test.run,
}
