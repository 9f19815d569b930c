"""Fuzz the settings file (coherence.config.load) with any bytes a --config file can hold.
Run: tools/fuzz.sh config [libFuzzer options]; replay a file: python fuzz/fuzz_config.py FILE.

What must hold for every file: load() returns a Config or raises ConfigError (one line for the
user), nothing else; a Config it returns validates again to itself, and the sentinel's
accumulators (Signals), its detectors and verdict engine (Monitor) and its scrape targets build
from it without an error, so that a file load() accepts never fails at start-up.
"""
import math
import os
import sys
import tempfile

import atheris

with atheris.instrument_imports(include=["coherence"]):
    from coherence.config import Config, ConfigError, load
    from coherence.monitor import Monitor
    from coherence.signals import Signals
    from coherence.sources.scrape import scrape_runtimes

# a settings file in the fuzzer's scratch directory (tools/fuzz.sh removes it)
PATH = os.path.join(tempfile.mkdtemp(prefix="coherence-fuzz-config-"), "coherence.toml")


def check_accepted(config: Config) -> None:
    assert config.validate() == config
    signals = Signals.from_config(config, ncpu=2.0)
    monitor = Monitor(config, signals.snapshot, lambda: None)
    monitor.step(0.0, 0.0)
    for runtime in scrape_runtimes(config):
        assert runtime.target.max_bytes >= 1 and math.isfinite(runtime.target.timeout_s)


def test_one_input(data: bytes) -> None:
    with open(PATH, "wb") as f:
        f.write(data)
    try:
        config = load(PATH)
    except ConfigError as err:
        text = str(err)
        assert text and "\n" not in text, repr(text)
        return
    check_accepted(config)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
