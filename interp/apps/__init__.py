"""The apps on the method's library (`interp.Pipeline`): the commands (`interpolate`, `interp-studio`,
`interp-batch`, `interp-retime`, `interp-eval`), the run folder they write, the studio's page, batches and
reports. The method itself knows nothing of them."""
