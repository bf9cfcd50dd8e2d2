"""The neutral home that training and inference share: a run's configuration, building its method and
extractor from it, checkpoint files and sliding-window inference. It imports only the layers below it."""
