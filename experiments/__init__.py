"""equivar's experiments, one module each (installed as ``equivar.experiments``).

``experiment=NAME`` runs the module ``equivar.experiments.NAME`` (conf/experiment/NAME.yaml picks it); any other
module that defines what :mod:`equivar.experiment` describes runs the same way, named by ``experiment_module``.
"""
