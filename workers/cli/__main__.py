from workers.cli.main import app

app()
