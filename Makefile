# Shorthands for ./run (which needs nothing but bash): `make demo` = `./run demo`, and so on.
.PHONY: demo test env lock shell bench clean-runs

demo test env lock shell bench:
	./run $@

clean-runs:
	rm -rf runs
