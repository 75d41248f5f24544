import CapstanCLI
@main struct Main { static func main() async { await CapstanMain.main() } }
