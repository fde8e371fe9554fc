"""What both planes share, torch-free: records of what a stage computes, readable without running it."""
