.PHONY: run test test-unit lint format bench

# Brings the whole system up in the foreground: web, worker, beat, Flower, relay, mail catcher.
run:
	bin/dev

# Runs the whole test suite against the real services (what CI runs).
test:
	bin/test $(ARGS)

# The tests that need no service at all (no database, broker, Redis or SMTP), in seconds.
test-unit:
	bin/bootstrap
	bin/system-packages --test
	DJANGO_SETTINGS_MODULE=project.settings \
	DJANGO_SECRET_KEY=$${DJANGO_SECRET_KEY:-test-only-secret-key-not-for-production} \
	.venv/bin/python -m pytest -m unit $(ARGS)

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format:
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

# Benchmarks: bare Celery against the platform (prints a table, writes docs/performance.png),
# the drain against bare Celery and Dramatiq (about 20 minutes; installs Dramatiq into the
# venv for the benchmark only), the ledger's own CPU a job, then PDF rendering alone.
bench:
	bin/bootstrap
	bin/services
	.venv/bin/python bench/run.py $(ARGS)
	.venv/bin/python bench/drain.py $(DRAIN_ARGS)
	.venv/bin/python bench/ledger_cpu.py
	.venv/bin/python bench/pdf_render.py
