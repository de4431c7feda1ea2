"""LoRA variants as small pieces the layers call: DoRA's magnitude, AdaLoRA's SVD form, PiSSA/OLoRA's
principal initialisation, and the plain-LoRA form each is saved in."""
