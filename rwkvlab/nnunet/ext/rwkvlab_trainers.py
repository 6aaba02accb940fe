"""The module nnU-Net imports from ``nnUNet_extTrainer`` (this folder) to find rwkvlab's trainers by name.

nnU-Net imports each module of that folder under its bare name, so the trainers stay in
``rwkvlab.nnunet.trainers`` and this module only hands them over, short-budget names included.
"""

from rwkvlab.nnunet.trainers import *  # noqa: F401,F403
from rwkvlab.nnunet.trainers import __getattr__  # noqa: F401
