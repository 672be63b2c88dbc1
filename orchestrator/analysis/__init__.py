"""Where numbers become answers, one stage per module: ``load`` (records from a store,
validated), ``tables`` (Qual, switch points, Table 1 under either counting rules),
``effects`` (repair against the unrepaired model, methods side by side), ``stats`` and
``headline`` (the answer with its uncertainty), ``figures``, ``document`` and ``report``
(what a reader sees), ``output`` (writing it all without ever leaving a half-written
report), ``problems`` (what is damaged or missing)."""
