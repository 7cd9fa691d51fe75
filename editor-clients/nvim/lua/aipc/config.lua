-- Options of the aipc Neovim plugin; require('aipc').setup(opts) merges opts over these.
local M = {}

M.defaults = {
  ghost = {
    enabled = true,
    -- Wait this long after the last keystroke before asking the model.
    debounce_ms = 150,
    hl_group = 'Comment',
  },
  -- Tell the server where the cursor rests (after this long without moving), so the window there
  -- is computed before the first keystroke.
  warm = {
    enabled = true,
    delay_ms = 400,
  },
  -- Insert-mode keys; false disables one. `accept` asks for a suggestion when none is shown.
  keys = {
    accept = '<C-l>',
    accept_word = '<M-w>',
    accept_line = '<M-l>',
    dismiss = '<C-]>',
  },
  chat = {
    width = 80,
    height = 20,
    border = 'rounded',
  },
}

M.options = vim.deepcopy(M.defaults)

function M.set(opts)
  M.options = vim.tbl_deep_extend('force', vim.deepcopy(M.defaults), opts or {})
  return M.options
end

return M
