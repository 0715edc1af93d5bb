"""Issue 5: post-training direct cast of the pretrained ports (MiniLM-L6, glassllm) to every MX / NVFP4 / FP8 / INT8
format. ``formats``: dot_general hooks per format and mode (and the FP8 paper's §4.3 configs); ``study``: the runner
(``python -m experiments.ptq.study [--quick]``); ``report``: RESULTS_PTQ.md text around the generated tables."""
