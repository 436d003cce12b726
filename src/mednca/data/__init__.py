"""Data: find cases in dataset folders, read and check volumes, slice them, split them."""
