from harness.run import cli

cli()
