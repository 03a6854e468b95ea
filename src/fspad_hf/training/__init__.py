"""training/: making heads. Chat data and assistant masks, self-distillation, target features (online or
offline shards), batches, the losses (drafting interface only), the objective module, the Trainer,
checkpoint discovery."""
