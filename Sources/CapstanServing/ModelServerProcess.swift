import Dispatch

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How a model-server process ended.
enum ProcessTermination: Hashable, Sendable, CustomStringConvertible {
    case exited(Int32)
    case signalled(Int32)

    var description: String {
        switch self {
        case .exited(let code): "exited with status \(code)"
        case .signalled(let signal): "was killed by signal \(signal)\(Self.signalName(signal).map { " (\($0))" } ?? "")"
        }
    }

    static func signalName(_ signal: Int32) -> String? {
        switch signal {
        case SIGTERM: "SIGTERM"
        case SIGKILL: "SIGKILL"
        case SIGINT: "SIGINT"
        case SIGSEGV: "SIGSEGV"
        case SIGABRT: "SIGABRT"
        case SIGBUS: "SIGBUS"
        case SIGHUP: "SIGHUP"
        default: nil
        }
    }
}

/// Why a process could not be started.
struct SpawnFailure: Error, Sendable, CustomStringConvertible {
    var message: String
    var description: String { message }
}

/// A child process that leads its own process group (its pid is the group id), started with
/// `posix_spawn` — no shell, an explicit environment, stdout and stderr appended to a log file,
/// signal mask and dispositions reset (the agent itself ignores SIGTERM/SIGINT to catch them, and
/// ignored dispositions survive `exec`).
///
/// The leader is reaped only by `pollExit`/`terminate`, after its whole group got SIGKILL: until
/// then its pid (and with it the group id) cannot be reused, so no signal here can hit a stranger.
struct ModelServerProcess: Sendable {
    let pid: pid_t

    /// Starts `argv` with `executable` (an absolute path) in `workdir`.
    static func spawn(
        executable: String, argv: [String], environment: [String: String], workdir: String, logPath: String
    ) throws(SpawnFailure) -> ModelServerProcess {
        let logFD = open(logPath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard logFD >= 0 else {
            throw SpawnFailure(message: "cannot open its log file '\(logPath)' (\(Self.errnoText(errno)))")
        }
        defer { close(logFD) }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, logFD, 1)
        posix_spawn_file_actions_adddup2(&actions, logFD, 2)
        if let closeFrom = SpawnExtensions.addCloseFrom {
            // Descriptors the agent opened without O_CLOEXEC (listening sockets would keep the
            // gateway's port busy after the agent exits) stay behind.
            _ = closeFrom(&actions, 3)
        }
        guard let addChdir = SpawnExtensions.addChdir else {
            throw SpawnFailure(message: "this C library has no posix_spawn_file_actions_addchdir_np (glibc 2.29 or later is needed)")
        }
        let chdirResult = workdir.withCString { addChdir(&actions, $0) }
        guard chdirResult == 0 else {
            throw SpawnFailure(message: "cannot set its working directory '\(workdir)' (\(Self.errnoText(chdirResult)))")
        }

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGPIPE, SIGUSR1, SIGUSR2, SIGCHLD, SIGALRM] {
            sigaddset(&defaults, signal)
        }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let arguments = argv.map { strdup($0) } + [nil]
        let variables = environment.sorted { $0.key < $1.key }.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for pointer in arguments { free(pointer) }
            for pointer in variables { free(pointer) }
        }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, executable, &actions, &attributes, arguments, variables)
        guard result == 0 else {
            throw SpawnFailure(message: "posix_spawn of '\(executable)' failed (\(Self.errnoText(result)))")
        }
        return ModelServerProcess(pid: pid)
    }

    /// The termination of the process when it has exited (then it is reaped, after SIGKILL to
    /// what is left of its group); nil while it runs.
    func pollExit() -> ProcessTermination? {
        var info = siginfo_t()
        let r = waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT)
        if r != 0 {
            // ECHILD: already reaped (cannot happen here) — report it as gone.
            return errno == EINTR ? nil : .signalled(SIGKILL)
        }
        #if canImport(Glibc)
        let exitedPID = info._sifields._sigchld.si_pid
        #else
        let exitedPID = info.si_pid
        #endif
        guard exitedPID != 0 else { return nil }
        _ = kill(-pid, SIGKILL)
        return reap()
    }

    private func reap() -> ProcessTermination {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            if errno != EINTR { return .signalled(SIGKILL) }
        }
        let signal = status & 0x7f
        return signal == 0 ? .exited((status >> 8) & 0xff) : .signalled(signal)
    }

    /// SIGTERM to the group, up to `grace` for the leader to exit, then SIGKILL to the group.
    /// Returns how the leader ended and whether SIGKILL was needed.
    func terminate(grace: Duration) async -> (ProcessTermination, killed: Bool) {
        if let done = pollExit() { return (done, false) }
        _ = kill(-pid, SIGTERM)
        let clock = ContinuousClock()
        let deadline = clock.now + grace
        while clock.now < deadline {
            await pause(milliseconds: 25)
            if let done = pollExit() { return (done, false) }
        }
        _ = kill(-pid, SIGKILL)
        while true {
            if let done = pollExit() { return (done, true) }
            await pause(milliseconds: 10)
        }
    }

    static func errnoText(_ code: Int32) -> String {
        String(cString: strerror(code))
    }

    /// The absolute path of `name`: as is when absolute, relative to `workdir` when it contains a
    /// `/`, else the first executable match in `path` (colon-separated).
    static func resolveExecutable(_ name: String, path: String?, workdir: String) -> String? {
        if name.hasPrefix("/") { return access(name, X_OK) == 0 ? name : nil }
        if name.contains("/") {
            let candidate = workdir + "/" + name
            return access(candidate, X_OK) == 0 ? candidate : nil
        }
        for directory in (path ?? "/usr/local/bin:/usr/bin:/bin").split(separator: ":") where !directory.isEmpty {
            let candidate = directory + "/" + name
            var info = stat()
            if stat(candidate, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG, access(candidate, X_OK) == 0 {
                return candidate
            }
        }
        return nil
    }
}

/// glibc's `_np` spawn extensions, which Swift's Glibc module does not declare.
enum SpawnExtensions {
    typealias AddChdir = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, UnsafePointer<CChar>) -> Int32
    typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32

    static let addChdir: AddChdir? = symbol("posix_spawn_file_actions_addchdir_np").map { unsafeBitCast($0, to: AddChdir.self) }
    static let addCloseFrom: AddCloseFrom? = symbol("posix_spawn_file_actions_addclosefrom_np").map { unsafeBitCast($0, to: AddCloseFrom.self) }

    private static func symbol(_ name: String) -> UnsafeMutableRawPointer? {
        #if canImport(Glibc)
        dlsym(UnsafeMutableRawPointer(bitPattern: 0), name)
        #else
        dlsym(UnsafeMutableRawPointer(bitPattern: -2), name)
        #endif
    }
}

/// Sleeps for real time even in a cancelled task: stopping processes must not turn into a busy
/// loop when the agent is being cancelled.
func pause(milliseconds: Int) async {
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
        DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(milliseconds)) { continuation.resume() }
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on right now (bound to 0, read back, closed).
func allocateLoopbackPort() throws(SpawnFailure) -> Int {
    #if canImport(Glibc)
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    #else
    let fd = socket(AF_INET, SOCK_STREAM, 0)
    #endif
    guard fd >= 0 else { throw SpawnFailure(message: "cannot allocate a port: socket() failed (\(ModelServerProcess.errnoText(errno)))") }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = 0
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let bound = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard bound == 0 else { throw SpawnFailure(message: "cannot allocate a port: bind() failed (\(ModelServerProcess.errnoText(errno)))") }
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let named = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    guard named == 0 else { throw SpawnFailure(message: "cannot allocate a port: getsockname() failed (\(ModelServerProcess.errnoText(errno)))") }
    return Int(UInt16(bigEndian: address.sin_port))
}
