"""What runs against the pipeline rather than in it: the gateway simulator
(:mod:`tools.sim`), mock provincial and national platforms (:mod:`tools.platform`), and a
private broker and scratch database for demos, tests and benchmarks (:mod:`tools.guest`)."""
