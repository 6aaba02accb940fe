from rwkvlab.bench.cli import main

main()
