// CapstanRunner: the `StepRunner` port over local subprocesses (DESIGN.md §5). Training and
// validation commands run as argv (never through a shell) in their own process group, with a
// deadline, their output streamed line by line and kept in a log file.
@_exported import CapstanCore
