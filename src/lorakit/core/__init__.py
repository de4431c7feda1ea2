"""The bottom layer: config, errors, targeting, LoRA layers and variants, injection, merging, quantisation,
base models and adapter files. Nothing here imports training, evaluation, serving, the registry or the CLI."""
