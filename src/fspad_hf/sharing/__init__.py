"""sharing/: publishing heads. Hub repos with a model card, and the standalone custom_generate/generate.py
built from decoding/ (no fspad-hf needed to run it)."""
