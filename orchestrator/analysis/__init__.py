"""Where numbers become answers: load records from a store, compute the paper's tables
(``tables``) and write figures and the report (``report``)."""
