"""The trainer: CLIP and S-CLIP fine-tuning on a corpus or a split, from a checkpoint artifact to
checkpoint artifacts (weights as safetensors + resumable state), with per-step losses in the
`train_log` table and validation through the evaluation stage. `loop.py` is the loop; the loss
of each method is a module in `losses.py`. See docs/train.md."""
