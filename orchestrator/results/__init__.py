"""What a run leaves in the store: the key layout (``layout``), the records (``records``)
and the progress events a trainer reports while it works (``events``)."""
