"""tgan's own command lines (one process, no Ray): launch/train_local.py and launch/evaluate.py call
`tgan.app.train.main` and `tgan.app.evaluate.main`; `tgan.app.recipe` holds the flags every training
command line shares (cluster/cli.py, the Ray ones, uses it too). Nothing below tgan/app imports it."""
