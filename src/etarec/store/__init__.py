"""What a finished run keeps and every later command reads: the checkpoint (weights, config,
vocabulary) and the catalog (raw ids <-> model indices). Below both train and serve."""
