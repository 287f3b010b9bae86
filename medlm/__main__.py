from medlm.cli import app

app(prog_name="medlm")
