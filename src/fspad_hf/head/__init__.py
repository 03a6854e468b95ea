"""head/: the draft head. Config and method table, the PreTrainedModel, the drafting interface every head
kind implements, the layer recipes, what it needs from a target, safe loading, int8 storage, shipped heads.
Imports nothing from decoding/, training/, evaluation/ or sharing/."""
