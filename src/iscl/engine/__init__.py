"""The ISCL method itself: its five networks' training step, optimizers, schedules and SWA, and the
process-group helpers the step needs. Imports only the layers below it (config, nn, losses, precision)."""
