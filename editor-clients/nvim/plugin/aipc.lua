-- Defaults for users who do not call require('aipc').setup() themselves.
if vim.g.loaded_aipc then
  return
end
vim.g.loaded_aipc = true
require('aipc').setup(vim.g.aipc_options)
