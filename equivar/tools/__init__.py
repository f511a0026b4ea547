"""The tools that work on equivar rather than measure with it: benchmarks (``bench``, with the plain PyTorch
baseline ``torch_baseline``), the processor spread of a run (``spread``) and the documentation generators
(``reference_docs``: the option reference, the mistakes table and the JSON Schemas; ``results_docs``: the
results tables and figures filled in from run folders). The library never imports them."""
