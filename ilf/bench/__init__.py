"""`ilf bench`: wall-clock speed of every method on the real architectures, measured against block forwards.

    rows.py    the benchmark rows (paper Tables 1, 3, 4 and peer methods) and how to attach each
    loop.py    the transformer-plus-scheduler loop a stock pipeline runs (text encoder and VAE left out)
    timing.py  synchronised wall clocks and peak memory
    run.py     building the model, interleaved runs, the table and the CSV
"""
