"""Benchmarks, one module each: ``python -m rwkvlab.bench wkv|train|data|metrics|scaling3d|startup|gpu``.

* ``wkv`` (:mod:`rwkvlab.bench.wkv`): every Bi-WKV path timed and checked against float64 (issue 3, docs §2, §9).
* ``train`` (:mod:`rwkvlab.bench.train`): a training step and inference at 224x224 (issue 10); on the CPU
  RWKV-UNet-T beside MONAI's BasicUNet, on a GPU T/S/B in fp32 and bf16.
* ``data`` (:mod:`rwkvlab.bench.data`): the input pipeline's throughput.
* ``metrics`` (:mod:`rwkvlab.bench.metrics`): DSC/HD95 of Synapse-sized volumes, boxed against whole-volume.
* ``scaling3d`` (:mod:`rwkvlab.bench.scaling3d`): a 3D training step over patch sizes (docs §9, §18).
* ``startup`` (:mod:`rwkvlab.bench.startup`): what each study notebook's imports cost in a fresh process.
* ``gpu`` (:mod:`rwkvlab.bench.gpu`): all of the above that a GPU machine must show, in one command under 8
  minutes, each part failing on a missed target; the command exits non-zero when any part fails.
"""
