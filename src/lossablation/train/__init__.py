"""Training: losses, metrics of a run, optimizer steps, the resumable epoch loop, and the Stage-1 / Stage-2 trainers."""
