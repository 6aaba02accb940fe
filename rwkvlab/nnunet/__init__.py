"""RWKV-UNet inside nnU-Net v2, with no fork and no copy of nnU-Net (docs §24).

- :mod:`rwkvlab.nnunet.network`: the plans' architecture entry for RWKV-UNet and the constructor it names.
- :mod:`rwkvlab.nnunet.trainers`: ``nnUNetTrainerRWKVUNet{T,S,B}``, ``nnUNetTrainerRWKVUNet`` and their short-budget
  variants, which nnU-Net finds through ``nnUNet_extTrainer`` (the folder ``ext/``).
- :mod:`rwkvlab.nnunet.steps`: nnU-Net's folders under ``data/`` and the path of a dataset through nnU-Net.
- ``python -m rwkvlab.nnunet``: that path from the command line, and the study's stages.

Importing this package imports neither nnU-Net nor torch.
"""
