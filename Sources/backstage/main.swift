import BackstageCLI

// The `backstage` tool with nothing registered: every read-only command and `parked discard`;
// `rebuild` and `parked replay` need an application's build (BackstageTool with its pipelines).
await BackstageTool().main()
