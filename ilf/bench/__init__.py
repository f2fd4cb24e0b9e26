"""`ilf bench`: wall-clock speed of every method on the real architectures, measured against block forwards.

    rows.py    the benchmark rows (paper Tables 1, 3, 4 and peer methods) and how to attach each
    loop.py    the transformer-plus-scheduler loop a stock pipeline runs (text encoder and VAE left out)
    timing.py  synchronised wall clocks and peak memory
    settings.py  what a run times (`BenchSettings`, the defaults of `ilf bench`)
    models.py  the architectures with random weights (also for benchmarks/gpu_smoke.py)
    run.py     the reference pass and the interleaved timing passes (`run_bench`)
    records.py one record per row and variant (`RowTiming` -> CSV columns), the CSV and the printed table
    summary.py the fastest exact setting per row across bench CSVs, against the speed goals (`ilf bench-summary`)
"""
