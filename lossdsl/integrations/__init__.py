"""Glue for the trainers people use: ``lossdsl.integrations.hf`` (Hugging Face's ``Trainer``) and
``lossdsl.integrations.lightning`` (Lightning). Neither transformers nor lightning is a dependency:
each submodule imports what it needs only when it is imported (see docs/training.md)."""
